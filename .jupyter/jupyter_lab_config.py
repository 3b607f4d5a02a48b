# `make lab` starts JupyterLab with this file (jupyter lab --config=.jupyter/jupyter_lab_config.py).
# jupytext's contents manager (enabled when jupytext is installed) reads book/*.md as notebooks;
# lab/settings/overrides.json makes a double-click open Markdown/MyST files as notebooks, while
# kdnb/*.py still open in the editor.
from pathlib import Path

here = Path(__file__).resolve().parent
c.ServerApp.root_dir = str(here.parent)
c.LabApp.app_settings_dir = str(here / "lab" / "settings")
