"""The render engine shared by every backbone: clip plan and seed policy, motion-frame options, the clip loop, the
render store that keeps finished clips, segments, progress and previews."""
