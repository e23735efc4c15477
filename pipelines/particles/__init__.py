"""Particle statistics: crack-robust instances, measurements, flaws, detachment, COCO export.

Entry point: :func:`pipelines.particles.analyze.analyze_particles`.
"""
