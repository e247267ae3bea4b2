"""Topics: words, the topic query language, the batch index, matching and ranking. Pure.

Owns: the tokenizer shared by papers and queries (`words.py`), query text -> AST ->
a compiled function over bitsets, with errors that point at the column (`query.py`),
one inverted index per batch of candidate papers (`index.py`), and matching each
subscriber against it: evaluate, rank, cut, explain (`match.py`). Does not own which
papers are candidates or already delivered (the store and the pipeline pass them in),
nor how a match is shown (`digest/render/`). No I/O, no clock.
"""
