"""The gunicorn seam: the only package that imports gunicorn."""
