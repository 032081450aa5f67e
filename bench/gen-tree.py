"""A PHP-like tree for the benchmarks: N files under vendor/, log-normal sizes (mostly small files, a
long tail up to 400 KB, mean ~10 KB), deterministic (seed 7).

    python3 bench/gen-tree.py DIR N
"""
import os
import random
import sys

root, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(7)
words = [b"function", b"return", b"$this->", b"namespace", b"public", b"static", b"array(", b"=>", b"if (",
         b"foreach", b"use ", b"class ", b"// ", b"null", b"true", b"\n", b"    ", b"{", b"}", b";"]
for i in range(n):
    d = os.path.join(root, "vendor", f"pkg{i % 97}", f"src{i % 13}")
    os.makedirs(d, exist_ok=True)
    size = int(min(rng.lognormvariate(8.4, 1.1), 400_000))
    body = b"<?php\n" + b" ".join(rng.choice(words) for _ in range(size // 6)) + rng.randbytes(size // 8)
    with open(os.path.join(d, f"File{i}.php"), "wb") as f:
        f.write(body[:size])
