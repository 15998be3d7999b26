"""`srdeploy demo`: a local web page (Gradio) to try the models on one image, before and after."""
