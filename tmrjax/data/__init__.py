"""Image loading, folder walking and dataset builders."""
