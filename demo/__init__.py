"""The interactive demo (`aespa_demo.py`): prediction from clicks, drawing, the bundled sample, the gradio UI."""
