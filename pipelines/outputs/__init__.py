"""Outputs: what is done with rendered frames before they are handed out (encode, frames zip, safety check)."""
