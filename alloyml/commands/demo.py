"""`alloyml demo`: the main job on the embedded defaults."""


def register(subparsers) -> None:
    demo = subparsers.add_parser("demo", help="run the end-to-end demo on the embedded defaults")
    demo.add_argument("--quick", action="store_true", help="smaller sizes (the test suite's reduced demo)")
    demo.set_defaults(func=_demo)


def _demo(args) -> int:
    from alloyml.demo import run_demo

    run_demo(quick=args.quick)
    return 0
