"""Commands on the shapes world (b2diffurl/world/), at the top of the package because they use
the models, the stages and the analysis: pretrain.py trains the world's model (shipped in
model/shapes-sd), ceiling.py measures what a perfect generator would score through its
autoencoder, conditioning.py what its text encoder and UNet tell apart, and stage_failures.py
sorts a stage's samples by what went wrong."""
