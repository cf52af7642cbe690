"""A retrieval quality check on a corpus every Python has: the standard library's docstrings.

:func:`stdlib_corpus` gathers the docstrings of the public functions, classes and methods of
:data:`MODULES` (one document each, named ``module.qualname``); :data:`QUESTIONS` are
questions written by hand, each with the one function whose docstring answers it;
:func:`hits_at` counts how often that docstring is among the top ``k`` passages.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable

MODULES = [
    "argparse",
    "base64",
    "bisect",
    "calendar",
    "codecs",
    "collections",
    "contextlib",
    "copy",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "email.utils",
    "enum",
    "fnmatch",
    "fractions",
    "functools",
    "getpass",
    "glob",
    "gzip",
    "hashlib",
    "heapq",
    "html",
    "http.client",
    "inspect",
    "io",
    "itertools",
    "json",
    "logging",
    "math",
    "operator",
    "os",
    "pathlib",
    "platform",
    "posixpath",
    "pprint",
    "queue",
    "random",
    "re",
    "secrets",
    "shlex",
    "shutil",
    "socket",
    "sqlite3",
    "statistics",
    "string",
    "struct",
    "subprocess",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "time",
    "traceback",
    "urllib.parse",
    "uuid",
    "warnings",
    "weakref",
    "zipfile",
    "zlib",
]

QUESTIONS: tuple[tuple[str, str], ...] = (  # (question, the function whose docstring answers it)
    ("How do I join several pathname components into one path?", "posixpath.join"),
    ("split the file extension off a path", "posixpath.splitext"),
    ("expand ~ to the user's home directory", "posixpath.expanduser"),
    ("recursively copy a whole directory tree", "shutil.copytree"),
    ("delete a directory tree recursively", "shutil.rmtree"),
    ("find where a command is on the PATH", "shutil.which"),
    ("how much disk space is total, used and free?", "shutil.disk_usage"),
    ("serialize an object to a JSON formatted string", "json.dumps"),
    ("turn a str containing a JSON document into a Python object", "json.loads"),
    ("replace the leftmost non-overlapping occurrences of a pattern", "re.sub"),
    ("escape special characters in a string for a regular expression", "re.escape"),
    ("remove the common leading whitespace from every line", "textwrap.dedent"),
    ("wrap a paragraph into lines no wider than a given width", "textwrap.wrap"),
    ("a least-recently-used cache decorator with a maxsize", "functools.lru_cache"),
    ("new function with partial application of the given arguments", "functools.partial"),
    ("find the n largest elements in a dataset", "heapq.nlargest"),
    ("merge several sorted inputs into a single sorted output", "heapq.merge"),
    ("insert an item into a sorted list so it stays sorted", "bisect.insort_right"),
    ("shuffle a list in place", "random.shuffle"),
    ("choose k unique random elements from a population", "random.sample"),
    ("the middle value of numeric data", "statistics.median"),
    ("square root of the sample variance", "statistics.stdev"),
    ("greatest common divisor", "math.gcd"),
    ("are two floating point numbers close in value?", "math.isclose"),
    ("number of ways to choose k items from n items without order", "math.comb"),
    ("list the paths matching a pathname pattern with shell-style wildcards", "glob.glob"),
    ("test whether a filename matches a Unix shell pattern", "fnmatch.fnmatch"),
    ("create a unique temporary directory and return its pathname", "tempfile.mkdtemp"),
    ("run a command and return its output, raising if the exit code was non-zero", "subprocess.check_output"),
    ("encode bytes with Base64", "base64.b64encode"),
    ("password based key derivation function with HMAC", "hashlib.pbkdf2_hmac"),
    ("compute a CRC-32 checksum of data", "zlib.crc32"),
    ("open a gzip-compressed file in text mode", "gzip.open"),
    ("parse a URL into scheme, netloc, path, params, query and fragment", "urllib.parse.urlparse"),
    ("make &, < and > safe to put in HTML", "html.escape"),
    ("a random text string in hexadecimal", "secrets.token_hex"),
    ("generate a random UUID", "uuid.uuid4"),
    ("show the delta between two sequences of lines as a unified diff", "difflib.unified_diff"),
    ("deep copy of an arbitrary Python object", "copy.deepcopy"),
    ("is this year a leap year?", "calendar.isleap"),
    ("a clock that cannot go backward", "time.monotonic"),
    ("move an existing element to the end of an ordered dictionary", "collections.OrderedDict.move_to_end"),
    ("split a string using shell-like syntax", "shlex.split"),
    ("cartesian product of input iterables", "itertools.product"),
    ("count hashable items, like a bag or multiset", "collections.Counter"),
)  # fmt: skip


def _name(obj: object, owner: object = None) -> str | None:
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not module and inspect.isclass(owner):  # methods of C classes name no module
        module = owner.__module__
    return f"{module}.{qualname}" if module and qualname else None


def resolve(dotted: str) -> str:
    """The corpus name (``module.qualname`` of the object) of a dotted path like ``random.shuffle``."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        owner = None
        for attr in parts[cut:]:
            owner, obj = obj, getattr(obj, attr)
        name = _name(obj, owner)
        if name is None:
            raise ValueError(f"{dotted}: has no module and qualified name")
        return name
    raise ValueError(f"{dotted}: no such module")


def stdlib_corpus(min_chars: int = 20) -> dict[str, str]:
    """``{module.qualname: docstring}`` for the public callables and classes of :data:`MODULES`
    and the public methods of those classes (each object once, by its own name)."""
    corpus: dict[str, str] = {}

    def take(obj: object, owner: object = None) -> None:
        name, doc = _name(obj, owner), getattr(obj, "__doc__", None)
        if name and isinstance(doc, str) and len(doc.strip()) >= min_chars and name not in corpus:
            corpus[name] = inspect.cleandoc(doc)

    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for attr, obj in sorted(vars(module).items()):
            if attr.startswith("_") or not (callable(obj) or inspect.isclass(obj)):
                continue
            take(obj)
            if inspect.isclass(obj):
                for method_name in sorted(vars(obj)):
                    method = getattr(obj, method_name, None)
                    if not method_name.startswith("_") and callable(method):
                        take(method, obj)
    return corpus


def hits_at(search: Callable[[str, int], list[str]], k: int = 3) -> tuple[float, list[str]]:
    """Share of :data:`QUESTIONS` whose answer is among ``search(question, k)``'s sources, and
    the questions missed."""
    missed = [q for q, target in QUESTIONS if resolve(target) not in search(q, k)]
    return 1 - len(missed) / len(QUESTIONS), missed
