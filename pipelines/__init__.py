"""The flower-classifier pipeline, its compiled YAML and its command line."""

# The component image's default name. It has no registry, so set the real one with --image or
# $FLOWER_PIPELINE_IMAGE when compiling for a cluster.
DEFAULT_IMAGE = "flower-classifier-pipeline:0.1.0"
