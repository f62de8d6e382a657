"""The hydra config tree of ``speechsq train`` (composed with ``initialize_config_module``)."""
