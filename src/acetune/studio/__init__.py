"""`acetune studio`: a local web app to review the dataset, run the stages and watch training (docs/studio.md)."""
