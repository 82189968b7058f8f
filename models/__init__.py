"""The shipped model bundles and their model card, installed as the package ``streamemg.models``."""
