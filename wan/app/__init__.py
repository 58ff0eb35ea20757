"""The web app (`python app.py`): pure logic in `logic`, generation runs in `runner`, the Gradio page in `ui`.
Import `wan.app.ui` only where Gradio is wanted; `logic` needs neither Gradio nor torch."""

import os

# Gradio reads this when it is imported (by wan.app.ui): no usage reports or version checks sent home.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
