"""What a guest is made of, built on the host and the same for every backend:
the initramfs and its cache, the cpio writer, the templates of every
generated file, the guest's /etc and units, and each boot's work directory.
What differs per backend comes from its :class:`~..backend.base.Layout`.
"""
