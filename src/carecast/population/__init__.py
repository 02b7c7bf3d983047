"""Population health: cases, hospitalisations and deaths per 100,000 by state, and the regression of
death rate on case rate. No Flask and no SQL here: the store hands in counts, the UI and CLI render.
"""
