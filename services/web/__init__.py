"""The live web page and the self-contained HTML report."""
