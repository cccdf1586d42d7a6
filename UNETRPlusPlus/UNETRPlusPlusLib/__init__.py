"""Logic of the UNETRPlusPlus Slicer module, importable without Qt (runs headless on slicer-core).

- modelstore: installed models and the catalogue as plain JSON (no torch in Slicer's process)
- state: every GUI decision (inputs, auto-assignment, Segment enabled?, progress text)
- process: the engine process and its JSON-lines progress
- logic: MRML in -> engine process -> segmentation/table/probability nodes out; model management
- parameters: settings in the scene's parameter node
- dependencies: torch/monai/safetensors check and consented install
"""
