"""segeig web demo (Gradio), installed as ``segeig.app``. Start it with
``segeig demo`` or ``python app/app.py``; see docs/demo.md.

``logic`` holds the framework-free logic (``uploads`` reads uploaded images,
``legend`` captions and legends the segments), ``handlers`` the Gradio event
handlers, ``ui`` the Gradio wiring (``build_demo``, ``serve``), ``startup`` the
choice (or fit) of the checkpoint to serve, ``app`` the script entry point.
The demo uses only segeig's public API.
"""
