"""The data stages, in pipeline order: ``extract`` (zips -> raw images), ``crop`` (-> aligned
112x112 faces), ``split`` (-> identity-disjoint train/val)."""
