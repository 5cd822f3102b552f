"""cffi API-mode builder of host.sip._speedups, the optional C scanner of
_scan.c. setup.py names it in `cffi_modules`; during development build it
in place with `python host/sip/_speedups_build.py`. The parser works without
it (pure Python), so a missing compiler only costs speed."""

from __future__ import annotations

import pathlib
import shutil

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent

ffibuilder = FFI()
ffibuilder.cdef("""
    int bs_scan(const unsigned char *buf, size_t len, int32_t *out, size_t cap);
    const char *bs_name_of(int id);
    int bs_layout(void);
""")
ffibuilder.set_source(
    "host.sip._speedups",
    '#include "_scan.c"',
    include_dirs=[str(HERE)],
    extra_compile_args=["-O2"],
    depends=[str(HERE / "_scan.c")],
    optional=True,  # setuptools: a failed compile leaves the pure-Python parser
)

if __name__ == "__main__":
    # cffi writes its generated C and objects under build/ (ignored by git);
    # the extension is then copied next to the sources.
    built = ffibuilder.compile(tmpdir=str(HERE.parent.parent / "build" / "cffi"))
    shutil.copy(built, HERE)
    print("built", HERE / pathlib.Path(built).name)
