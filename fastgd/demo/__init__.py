"""``python -m fastgd.demo`` / ``fastgd demo``: train a small byte-level GPT with fastgd's loss
and optimizer, optionally side by side with PyTorch's (``--compare``).

Modules: :mod:`.data` (corpus, batches), :mod:`.model` (the GPT), :mod:`.recipe` (the loss and
optimizer of each stack -- the part fastgd replaces), :mod:`.train` (the loop),
:mod:`.metrics`, :mod:`.report`, :mod:`.plot`, :mod:`.checkpoint`, :mod:`.config`,
:mod:`.memory` (does it fit), :mod:`.stop` (Ctrl-C and SIGTERM), :mod:`.app` (the whole demo)
and :mod:`.cli` (its command line).
"""
