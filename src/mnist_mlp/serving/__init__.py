"""Serving: predicting on image files, the web app, the REST model server, sample digits."""
