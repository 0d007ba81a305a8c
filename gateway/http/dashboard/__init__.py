"""The live health dashboard at ``/dashboard`` on the ops listener (``routes``): a sampler that
builds one state a second for every open page (``sampler``, ``state``, ``window``), what a
change would move (``impact``), the operator's login (``session``), and the page with its
vendored libraries (``static/``, shipped inside the package)."""
