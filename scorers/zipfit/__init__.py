"""The ``zipfit`` scorer (:mod:`.scorer`) and the compressed lengths it is built on
(:mod:`.compressors`: one ``Codec`` per compressor and level)."""
