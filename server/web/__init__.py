"""The operator's web page, its live feed, /metrics and the offline API docs."""
