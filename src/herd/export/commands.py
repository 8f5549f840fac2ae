"""``herd export ARTIFACT --to gguf|hf``."""

from __future__ import annotations

from pathlib import Path

from herd.core.errors import HerdError


def _cmd_export(args) -> int:
    from herd.artifacts import locate_artifact
    from herd.export.gguf_file import default_gguf_path  # numpy and gguf: not at CLI start-up

    args.artifact = locate_artifact(args.artifact)
    if args.to == "gguf":
        from herd.export import export_gguf, write_modelfile

        dtype = args.dtype or "f16"
        out = Path(args.out) if args.out else default_gguf_path(args.artifact, dtype)
        path = export_gguf(args.artifact, out, dtype)
        print(f"gguf: {path}")
        try:
            print(f"ollama: {write_modelfile(args.artifact, path)}  (ollama create NAME -f Modelfile)")
        except HerdError as e:
            print(f"ollama: no Modelfile ({e})")
    else:
        from herd.export import export_hf

        out = Path(args.out) if args.out else Path(args.artifact) / "export" / "hf"
        print(f"hf: {export_hf(args.artifact, out, args.dtype)}")
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("export", help="write an artifact as GGUF (+ Ollama Modelfile) or a portable HF folder")
    p.add_argument("artifact")
    p.add_argument("--to", choices=("gguf", "hf"), required=True)
    p.add_argument("--dtype", help="gguf: f32, f16 (default) or q8_0; hf: f32, f16 or bf16 (default: as stored)")
    p.add_argument("--out", help="output file (gguf) or folder (hf); default ARTIFACT/export/")
    p.set_defaults(func=_cmd_export)
