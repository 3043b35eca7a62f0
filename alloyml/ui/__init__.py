"""The Streamlit dashboard: read-only pages over the metadata store."""
