"""API dialects: each subpackage is one hosted API's routes + schema; `common` holds what they share."""
