"""Split inference as a service: a finished run behind HTTP (the server side of paper Fig. 2)."""
