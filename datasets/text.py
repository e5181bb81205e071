"""Text as bag-of-words: one tokeniser, one vocabulary rule and one bag-of-words, used by `prepare`
(building the training file) and by text queries at search time, so a query is encoded exactly as
the training text was.

A token is a maximal run of letters and digits, lower-cased (Unicode-aware: "Café-au-lait" gives
café, au, lait). A MIRFlickr or NUS-WIDE tag line is tokenised the same way, so a tag that is one
word stays one token.
"""
import re
from collections import Counter

import numpy as np

TOKEN = re.compile(r'[^\W_]+')


def tokenize(text):
    """Lower-cased runs of letters and digits of `text`."""
    return TOKEN.findall(text.lower())


def count_documents(token_lists):
    """In how many documents each token appears (a token repeated in one document counts once)."""
    counts = Counter()
    for tokens in token_lists:
        counts.update(set(tokens))
    return counts


def build_vocabulary(counts, size=None, min_count=1):
    """The tokens with at least `min_count` documents, most frequent first (ties alphabetical), at
    most `size` of them."""
    words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    return words if size is None else words[:size]


def bag_of_words(token_lists, vocabulary, dtype=np.uint8):
    """len(token_lists) x len(vocabulary) 0/1 matrix: 1 where the document holds the word."""
    index = {w: j for j, w in enumerate(vocabulary)}
    out = np.zeros((len(token_lists), len(vocabulary)), dtype=dtype)
    for i, tokens in enumerate(token_lists):
        columns = [index[t] for t in tokens if t in index]
        out[i, columns] = 1
    return out


def outside(tokens, vocabulary):
    """The tokens that the vocabulary does not hold, in order, without repeats."""
    known = set(vocabulary)
    return list(dict.fromkeys(t for t in tokens if t not in known))
