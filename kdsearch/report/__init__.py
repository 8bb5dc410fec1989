"""What a user sees of a study: the HTML page and its tables (``page.py``), what it shows as data
(``content.py``), the plotly figures (``figures.py``) and optuna-dashboard with the report as an artifact
(``dashboard.py``).

Reads the study through ``search``; trains nothing and imports no torch. Independent of ``ship``.
"""
