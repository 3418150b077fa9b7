"""HTTP handlers grouped by resource: ocr.py (/ocr_service and its tasks), ops.py (/health,
/ready and the 404 fallback); base.py holds what every handler shares."""
