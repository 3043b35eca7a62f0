"""Entry point of the dashboard: `streamlit run alloyml/ui/app.py` (what `alloyml ui` starts).

Opens the store that ALLOYML_DB_URL / ALLOYML_HOME name, then hands over to the page the user picked. Each
page is a script in `views/`; they only read the store, through `alloyml.ui.queries`.
"""

from pathlib import Path

import streamlit as st

from alloyml.errors import AlloyError
from alloyml.ui import queries

VIEWS = Path(__file__).resolve().parent / "views"
PAGES = (
    ("overview.py", "Overview", ":material/dashboard:"),
    ("data_values.py", "Data values", ":material/scatter_plot:"),
    ("merges.py", "Merges", ":material/merge:"),
    ("cascades.py", "Cascades", ":material/account_tree:"),
    ("workflows.py", "Workflows", ":material/schema:"),
    ("schedules.py", "Schedules", ":material/schedule:"),
    ("models.py", "Models & training", ":material/model_training:"),
    ("automl.py", "AutoML", ":material/tune:"),
)

st.set_page_config(page_title="alloyml", page_icon=":material/join_inner:", layout="wide")
page = st.navigation([st.Page(VIEWS / file, title=title, icon=icon, default=index == 0)
                      for index, (file, title, icon) in enumerate(PAGES)])
try:
    key = queries.current_store()
    queries.platform(key)
except AlloyError as err:
    st.error(f"Cannot open the store: {err}")
    st.stop()
st.sidebar.caption(f"store: `{key[0]}`")
page.run()
