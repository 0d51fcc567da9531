"""The `.k` grammar (kdsl.lark), shipped as package data of `kcompile.grammar`.

This file only makes the folder a regular package: setuptools' editable installs cannot map a
namespace subpackage to another folder, so without it `importlib.resources` finds no grammar.
"""
