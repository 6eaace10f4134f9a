"""One ml_collections config per paper method (installed as ``tmrjax.configs``)."""
