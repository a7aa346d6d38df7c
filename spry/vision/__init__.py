"""Vision-language models: the offline CLIP the project builds, and a real one.

`clip` holds the interface (`VisionLanguageModel`: normalized image and text
features, CLIP's logit scale; `LayerwiseClip`: each tower's parts one layer at a
time, for prompt methods) and its two sources; `vit` the image tower;
`images` the offline image sets; `build` trains, caches and reports the offline
CLIP (`python -m spry.vision.build`). Submodules are imported where used, so
`import spry.vision` loads no transformers.
"""
