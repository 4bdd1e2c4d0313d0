"""The main job end to end: demo, batch annotation and the paper evaluation harness."""
