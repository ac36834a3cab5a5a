"""Training and scoring an encoder: the pretraining loop, the AG News probe and the full-length retrain.
Below hpo/ (which runs studies of it) and above model/ and data/; config.py is torch-free."""
