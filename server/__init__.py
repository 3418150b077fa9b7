"""ppocr-server: the Tornado front end, the supervised worker pool and the result cache."""
