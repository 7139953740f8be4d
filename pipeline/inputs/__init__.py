"""What the engine is run on: datasets, the models, closed paths and planes through images."""
