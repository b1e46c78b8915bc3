"""The DCGAN of Radford, Metz and Chintala (2015): models, training, experiments."""
