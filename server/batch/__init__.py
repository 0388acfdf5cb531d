"""`vace batch`: render a manifest of jobs through a server (or locally) with resume, and report the cost."""
