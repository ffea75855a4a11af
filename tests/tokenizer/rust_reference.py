# Token ids from Hugging Face `tokenizers` (the Rust library behind transformers) for texts where
# the npm reference port disagrees with it (U+FEFF, which JavaScript's \s matches and Rust's
# does not). Run where `tokenizers` is installed (the GPU machine):
#   python tests/tokenizer/rust_reference.py TOKENIZER_JSON TEXTS_JSON
# and store its output as the "ids" of tests/tokenizer/rust_reference.json.
import json, sys
from tokenizers import Tokenizer
import tokenizers, transformers
print("versions", tokenizers.__version__, transformers.__version__, file=sys.stderr)
t = Tokenizer.from_file(sys.argv[1])
texts = json.load(open(sys.argv[2]))
print(json.dumps([t.encode(s, add_special_tokens=False).ids for s in texts]))
