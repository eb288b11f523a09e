"""What to remove: saliency, group selection and the shape bookkeeping of a removal.

Nothing here talks to other ranks: functions take already-reduced, global tensors.
"""
