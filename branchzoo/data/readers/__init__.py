"""Readers: each turns one on-disk format (or a generator) into uint8 arrays.

A reader module offers a `Layout` factory (how to recognise the files, which
files key the cache, how to read them); the dataset specs in
`branchzoo.data.catalog` pick the layouts they accept.
"""
