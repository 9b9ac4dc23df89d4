"""Model support that scorers and attribution methods share: loading a local causal LM and
rendering its chat template (``lm``), importing a GGUF into a Hugging Face folder
(``importer``), LoRA warmup training and its checkpoint format (``lora_warmup``,
``lora_checkpoints``, ``warmup_config``), per-example gradients (``gradients``) and random
projections of them (``projection``).

Nothing here is a scorer or knows about jobs: it sits below both ``scorers`` and
``attribution`` and imports only the core (``dataselect``). Importing this package loads
nothing; each module loads torch itself where it needs it.
"""
