"""The VAE family (posts 5253, 5343, 5383): VAE, the author's simplest CVAE, the IWAE bound.

``zoo.vae.losses`` holds the objectives, ``zoo.vae.models`` the Flax modules and
``zoo.vae.task`` the training task. (The poem VAE of post 5332 lives in ``zoo.vae.poem``
and is not imported here.)
"""
