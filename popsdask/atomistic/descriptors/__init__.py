"""Descriptor backends: the protocol and registry (:mod:`popsdask.atomistic.descriptors.base`) and the
built-in ``snap``, ``pod`` and ``ace`` backends, each registered by its own module."""
