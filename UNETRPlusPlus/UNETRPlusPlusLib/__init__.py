"""Logic of the UNETRPlusPlus Slicer module, importable without Qt (runs headless on slicer-core).

- modelstore: installed models and the catalogue as plain JSON (no torch in Slicer's process)
- state: every GUI decision (inputs, auto-assignment, Segment enabled?, progress text)
- process: the engine process and its JSON-lines progress
- tasks: BackgroundTask, one engine command in the background; failures keyed on the error category
- scene: MRML helpers (the scene's volumes, writing inputs, reading and checking results, tables)
- segment: one segmentation, MRML in -> engine process -> segmentation/table/probability nodes out
- modeltasks: download / install / remove models
- logic: the names of all of the above that the module, the self-test and scripts use
- errors: the module's errors (category, kind, message) and the engine-event mapping
- parameters: settings in the scene's parameter node
- dependencies: torch/monai/safetensors check and consented install
"""
