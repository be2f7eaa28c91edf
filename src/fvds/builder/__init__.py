"""The pipeline that turns a config into a dataset folder: plan, models, render, embed,
project, assemble."""
